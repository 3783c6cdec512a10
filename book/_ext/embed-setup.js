// Set-up for the ipywidgets embed manager, loaded between RequireJS and embed-amd.js
// (`make assets` copies it into book/_assets/widgets; _config.yml lists it).
(function () {
  // embed-amd.js defines its modules as "@jupyter-widgets/..." and loads its fonts from beside
  // each module's URL, which RequireJS resolves against the page: resolve them to this folder.
  var here = document.currentScript.src.replace(/\/[^\/]*$/, "");
  requirejs.config({paths: {"@jupyter-widgets/html-manager/dist": here, "@jupyter-widgets": here}});
  // The widgets typeset their labels with MathJax 2's MathJax.Hub.Queue; the book has MathJax 3.
  window.addEventListener("load", function () {
    var mathjax = window.MathJax;
    if (mathjax && mathjax.startup && !mathjax.Hub) {
      mathjax.Hub = {Queue: function (job) {
        mathjax.startup.promise.then(function () { return mathjax.typesetPromise([job[2]]); });
      }};
    }
  });
})();

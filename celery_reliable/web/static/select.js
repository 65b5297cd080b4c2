// The only script: "select all" for the dead-letter checkboxes. Every action also
// works without it (forms and links only).
document.addEventListener("DOMContentLoaded", function () {
  var all = document.getElementById("select-all");
  if (!all) return;
  all.addEventListener("change", function () {
    document.querySelectorAll('#letters input[name="id"]').forEach(function (box) {
      box.checked = all.checked;
    });
  });
});

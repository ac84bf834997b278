// smtpgw console: the little behaviour pages need. Loaded as a file (the
// Content-Security-Policy allows no inline script); every page works
// without it except the Copy buttons.
'use strict';

document.addEventListener('DOMContentLoaded', function () {
  // "Select all" ticks or clears every checkbox of its group; it shows
  // ticked when every box of the group is.
  document.querySelectorAll('input[data-select-all]').forEach(function (all) {
    var boxes = document.querySelectorAll('input[type=checkbox][name="' + all.dataset.selectAll + '"]');
    var sync = function () {
      all.checked = boxes.length > 0 && Array.prototype.every.call(boxes, function (b) { return b.checked; });
    };
    all.addEventListener('change', function () {
      boxes.forEach(function (b) { b.checked = all.checked; });
    });
    boxes.forEach(function (b) { b.addEventListener('change', sync); });
    sync();
  });

  // Copy buttons copy the value of the field they name.
  document.querySelectorAll('button[data-copy]').forEach(function (btn) {
    btn.addEventListener('click', function () {
      var field = document.getElementById(btn.dataset.copy);
      if (!field) { return; }
      field.focus();
      field.select();
      var done = function () {
        btn.textContent = 'Copied';
        btn.classList.add('copied');
      };
      var fallback = function () {
        try { document.execCommand('copy'); } catch (e) { /* selected: the user can copy */ }
        done();
      };
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(field.value).then(done, fallback);
      } else {
        fallback();
      }
    });
  });

  // The page showing a new key replaces its address in the history, so a
  // reload or Back shows the list, never the key again.
  var replace = document.body.dataset.replaceUrl;
  if (replace && window.history && window.history.replaceState) {
    window.history.replaceState(null, '', replace);
  }
});

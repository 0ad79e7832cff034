/* Web Workers for pages opened from disk. Browsers refuse `new Worker(url)` on file:// pages, which stops
 * mkdocs-material's search from starting; on such pages this runs the worker script in a hidden iframe instead,
 * with postMessage, the "message" event and importScripts bridged. Served pages (http, https) keep real Workers.
 * The file name contains "iframe-worker", so mkdocs-material's offline plugin does not add its CDN copy of such a shim
 * (the site makes no request outside itself). */
(function () {
  if (location.protocol !== 'file:' || typeof window === 'undefined') return;
  function FileWorker(url) {
    var target = document.createDocumentFragment(), self = this, queue = [], ready = false;
    this.onmessage = null; this.onerror = null;
    this.addEventListener = target.addEventListener.bind(target);
    this.removeEventListener = target.removeEventListener.bind(target);
    this.dispatchEvent = target.dispatchEvent.bind(target);
    var frame = document.createElement('iframe');
    frame.style.display = 'none'; frame.setAttribute('aria-hidden', 'true');
    (document.body || document.documentElement).appendChild(frame);
    var w = frame.contentWindow, doc = w.document;
    function load(src) {
      return new Promise(function (resolve, reject) {
        var s = doc.createElement('script'); s.src = new URL(src, location.href).href;
        s.onload = resolve; s.onerror = function () { reject(new Error('cannot load ' + src)); };
        doc.head.appendChild(s);
      });
    }
    w.postMessage = function (data) {             // the worker's postMessage: to this page
      var ev = new MessageEvent('message', { data: structuredClone(data) });
      if (typeof self.onmessage === 'function') self.onmessage(ev);
      self.dispatchEvent(ev);
    };
    w.importScripts = function () {                 // asynchronous here: mkdocs-material awaits it
      return Array.prototype.reduce.call(arguments, function (p, src) { return p.then(function () { return load(src); }); },
                                         Promise.resolve());
    };
    this._send = function (data) { w.dispatchEvent(new w.MessageEvent('message', { data: structuredClone(data) })); };
    this.postMessage = function (data) { if (ready) self._send(data); else queue.push(data); };
    this.terminate = function () { frame.remove(); };
    load(url).then(function () { ready = true; queue.splice(0).forEach(self._send); }, function (e) {
      var ev = new ErrorEvent('error', { message: String(e) });
      if (typeof self.onerror === 'function') self.onerror(ev);
      self.dispatchEvent(ev);
    });
  }
  window.Worker = FileWorker;
})();

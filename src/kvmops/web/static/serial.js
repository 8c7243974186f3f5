// The serial console: xterm.js on the same-origin WebSocket bridge to libvirt's console.
(function () {
  const box = document.getElementById("terminal");
  const status = document.getElementById("serial-status");
  if (!box || typeof Terminal === "undefined") return;
  const term = new Terminal({ convertEol: false, cursorBlink: true, scrollback: 5000,
                              fontSize: 14, rows: 30 });
  term.open(box);
  let socket = null;

  function say(text, kind) {
    status.textContent = text;
    status.className = "badge " + (kind || "");
    box.dataset.state = text;
  }

  function connect() {
    if (socket) socket.close();
    const proto = location.protocol === "https:" ? "wss://" : "ws://";
    say("connecting…");
    socket = new WebSocket(proto + location.host + box.dataset.ws, ["binary"]);
    socket.binaryType = "arraybuffer";
    socket.addEventListener("open", () => {
      say("connected", "ok");
      socket.send(new TextEncoder().encode("\r"));  // ask the guest for a fresh prompt
      term.focus();
    });
    socket.addEventListener("message", (ev) => {
      term.write(ev.data instanceof ArrayBuffer ? new Uint8Array(ev.data) : ev.data);
    });
    socket.addEventListener("close", (ev) => {
      say(ev.code === 1000 || ev.code === 1005 ? "disconnected"
          : "closed: " + (ev.reason || "is the VM running? are you logged in?"), "bad");
    });
  }

  term.onData((data) => {
    if (socket && socket.readyState === WebSocket.OPEN) socket.send(new TextEncoder().encode(data));
  });
  document.getElementById("serial-reconnect").addEventListener("click", connect);
  connect();
})();

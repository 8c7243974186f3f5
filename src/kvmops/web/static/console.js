// The VNC console: noVNC's RFB client on the same-origin WebSocket bridge.
import RFB from "/static/novnc/core/rfb.js";

const screen = document.getElementById("screen");
const status = document.getElementById("console-status");
let rfb = null;

function say(text, kind) {
  status.textContent = text;
  status.className = "badge " + (kind || "");
}

function connect() {
  if (rfb) rfb.disconnect();
  const proto = location.protocol === "https:" ? "wss://" : "ws://";
  say("connecting…");
  rfb = new RFB(screen, proto + location.host + screen.dataset.ws, { wsProtocols: ["binary"] });
  rfb.scaleViewport = true;
  rfb.background = "#111";
  rfb.addEventListener("connect", () => { say("connected", "ok"); screen.dataset.connected = "1"; });
  rfb.addEventListener("disconnect", (ev) => {
    screen.dataset.connected = "0";
    say(ev.detail.clean ? "disconnected" : "connection lost (is the VM running? are you logged in?)", "bad");
  });
  rfb.addEventListener("desktopname", (ev) => { screen.title = ev.detail.name; });
}

document.getElementById("reconnect").addEventListener("click", connect);
connect();

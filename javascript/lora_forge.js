// LoRA Forge (炼丹炉): the one global this extension defines. Later sections add their handlers
// here (keyboard shortcuts, progress polling) instead of new globals.
(function () {
    "use strict";
    if (window.loraForge) {
        return;
    }

    function app() {
        // Inside the WebUI gradioApp() reaches into gradio's shadow root; on our own page the
        // document is enough.
        return typeof gradioApp === "function" ? gradioApp() : document;
    }

    window.loraForge = {
        root: function () {
            return app().querySelector("#lora_forge");
        },
        // True while our tab is the one on screen, so shortcuts never fire in other tabs.
        active: function () {
            var root = this.root();
            return !!root && root.offsetParent !== null;
        },
        shortcuts: {},
        onKey: function (key, handler) {
            this.shortcuts[key] = handler;
        },
    };

    document.addEventListener("keydown", function (event) {
        var lf = window.loraForge;
        var handler = lf.shortcuts[event.key];
        if (handler && lf.active()) {
            handler(event);
        }
    });
})();

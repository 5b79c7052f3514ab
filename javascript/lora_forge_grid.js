// LoRA Forge 测试 (test grid): send the grid's X/Y/Z plot settings to txt2img, open the grid full size.
//
// Sending uses the WebUI's own "read generation parameters from prompt" button (↙, elem_id
// "paste" in the #txt2img_tools row, 1.6 → 1.10.1): we put WebUI infotext into #txt2img_prompt
// and press it, and the WebUI itself fills the prompt, negative prompt, steps, sampler, CFG, seed,
// size, the Script dropdown (#script_list) and the X/Y/Z plot's X/Y type and values through
// their infotext fields. Setting gradio dropdowns from outside is fragile; the paste path is the
// one the WebUI keeps working for its PNG Info tab.
(function () {
    "use strict";
    if (window.loraForgeGrid) {
        return;
    }

    function app() {
        return typeof gradioApp === "function" ? gradioApp() : document;
    }

    function setText(el, value) {
        el.value = value;
        if (typeof updateInput === "function") {
            updateInput(el);
        } else {
            el.dispatchEvent(new Event("input", {bubbles: true}));
        }
    }

    function showTxt2img() {
        if (typeof switch_to_txt2img === "function") {
            switch_to_txt2img();
            return;
        }
        var tabs = app().querySelector("#tabs");
        var button = tabs && tabs.querySelector("button");
        if (button) {
            button.click();
        }
    }

    window.loraForgeGrid = {
        sendToTxt2img: function (infotext, info) {
            if (!infotext) {
                return info; // nothing to send: the message from the server says why
            }
            var root = app();
            var prompt = root.querySelector("#txt2img_prompt textarea");
            var paste = root.querySelector("#txt2img_tools #paste") || root.querySelector("#txt2img_paste");
            if (!prompt || !paste) {
                return "There is no txt2img tab on this page: enter the settings below in the WebUI by hand.\n\n" + info;
            }
            setText(prompt, infotext);
            paste.click();
            showTxt2img();
            return "Sent: txt2img now has the prompt and the X/Y/Z plot (Prompt S/R on X and Y); press Generate there.\n\n" + info;
        },
        // gradio 3.41 serves the picture as a data: URL, which browsers refuse to open as a page;
        // a blank window showing it at full size works everywhere (and is opened within the click).
        openFull: function () {
            var img = app().querySelector("#lora_forge_grid_image img");
            if (!img || !img.src) {
                return;
            }
            var win = window.open("", "_blank");
            if (!win) {
                return;
            }
            win.document.title = "LoRA Forge grid";
            win.document.body.style.margin = "0";
            var big = win.document.createElement("img");
            big.src = img.src;
            big.id = "lora_forge_full_grid";
            win.document.body.appendChild(big);
        },
    };
})();

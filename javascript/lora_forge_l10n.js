// LoRA Forge (炼丹炉): our tab's remaining English words (dropdown entries, table headers, words a
// handler put on the page) in the WebUI's language, inside our tab only. The WebUI's own
// localization.js would apply our catalog to its whole page (it renamed the WebUI's Train tab), so
// the catalog is kept out of it (lora_forge/host/webui.py); labels are translated when the tab is
// built, and this swaps exact whole strings below #lora_forge, as localization.js does page-wide.
// On our own page (python -m lora_forge ui) the page script in lora_forge/ui/translate.py does it.
(function () {
    "use strict";
    var script = document.currentScript ? document.currentScript.src : "";
    var words = null;

    function language() {
        // resolve_language in lora_forge/i18n.py: any simplified-Chinese setting uses zh_CN
        var setting = String((window.opts && window.opts.localization) || "").trim();
        var low = setting.toLowerCase().replace(/-/g, "_");
        if (!setting || low === "none" || low.indexOf("en") === 0) return null;
        if (low.indexOf("zh") === 0 && !/hant|tw|hk/.test(low)) return "zh_CN";
        return null;
    }

    function root() {
        var app = typeof gradioApp === "function" ? gradioApp() : document;
        return app.querySelector("#lora_forge");
    }

    function swap(text) {
        var key = text.trim();
        return key && Object.prototype.hasOwnProperty.call(words, key) ? text.replace(key, words[key]) : null;
    }

    function run() {
        var top = root();
        if (!top || !words) return;
        var walker = document.createTreeWalker(top, NodeFilter.SHOW_TEXT);
        for (var node = walker.nextNode(); node; node = walker.nextNode()) {
            var parent = node.parentElement && node.parentElement.nodeName;
            if (parent === "TEXTAREA" || parent === "SCRIPT" || parent === "STYLE") continue;
            var out = swap(node.nodeValue);
            if (out !== null) node.nodeValue = out;
        }
        top.querySelectorAll("[placeholder], [title]").forEach(function (el) {
            ["placeholder", "title"].forEach(function (attr) {
                var out = el.hasAttribute(attr) ? swap(el.getAttribute(attr)) : null;
                if (out !== null) el.setAttribute(attr, out);
            });
        });
    }

    function load() {
        var lang = language();
        if (!lang || !script) return;
        // beside this file: <extension>/javascript/… → <extension>/localizations/<lang>.json
        // (a Windows WebUI may write the path with backslashes, encoded or not)
        var url = script.replace(/javascript(\/|\\|%5C)lora_forge_l10n\.js.*$/i, "localizations$1" + lang + ".json");
        fetch(url)
            .then(function (r) {
                return r.ok ? r.json() : null;
            })
            .then(function (catalog) {
                if (!catalog) return;
                words = {};
                Object.keys(catalog).forEach(function (k) {
                    if (k.indexOf("{") < 0) words[k] = catalog[k]; // templates are for messages
                });
                run();
            })
            .catch(function () {});
    }

    if (typeof onUiLoaded === "function") onUiLoaded(load);
    if (typeof onUiUpdate === "function") onUiUpdate(run);
})();

"""The gen-nvs Gradio app: `logic` (what it does, testable without a browser), `ui` (the
page), `visuals` (its own pictures), `command` (`gen-nvs app`). It builds on the `gen_nvs`
library, which does not import it."""

"""The gen-nvs Gradio app: `logic` (what it does, testable without a browser), `ui` (the
page), `visuals` (pictures of results, shared with `gen-nvs render`)."""

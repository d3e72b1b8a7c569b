"""Sub-commands of the `gen-nvs` console command (see gen_nvs.cli)."""

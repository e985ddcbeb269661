"""One module per stage; each exposes run(recipe, out_dir, inputs) -> metrics, reading top to bottom."""

"""``python -m recipes.text_classification OUT_DIR [--seed N]`` writes the sample data set."""

from recipes.text_classification.sample_data import main

raise SystemExit(main())

"""``python -m recipes.image_classification OUT_DIR [--seed N]`` writes the sample images."""

from recipes.image_classification.sample_data import main

raise SystemExit(main())

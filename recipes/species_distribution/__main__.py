"""``python -m recipes.species_distribution OUT_DIR [--seed N]`` writes the sample site."""

from recipes.species_distribution.sample_data import main

raise SystemExit(main())

"""``python -m recipes.state_identifier OUT_DIR [--seed N]`` writes the sample data set."""

from recipes.state_identifier.sample_data import main

raise SystemExit(main())

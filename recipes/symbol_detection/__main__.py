"""``python -m recipes.symbol_detection ZIP [--images N] [--seed N]`` writes a sample zip."""

from recipes.symbol_detection.sample_data import main

raise SystemExit(main())

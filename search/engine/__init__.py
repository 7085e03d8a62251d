"""The search engine: options, the loss space, the optimiser's Tune searcher, the evaluation log,
trials, elite re-evaluation, the report, and the search driver that runs them."""

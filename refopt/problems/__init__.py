"""Problems: data sets for the networks, and classical test functions with analytic derivatives."""

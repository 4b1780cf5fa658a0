"""Legacy reference modules of the e-commerce example from before issue 13 (the fixed event contract, feature
views and tile engine): the tests and benchmarks compare the plan-driven engines with them; fstore no longer
uses them."""

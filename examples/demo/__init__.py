"""``make demo``: the shipped example's walkthrough on local services (:mod:`examples.demo.walkthrough`)."""

"""``python -m examples.demo``: run the walkthrough (:func:`examples.demo.walkthrough.main`)."""

from examples.demo.walkthrough import main

main()

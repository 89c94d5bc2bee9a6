"""`antoni-bridge batch`: one question (or several) over every image and annotation of a QuPath project,
a slide or a folder of slides, answers written back where QuPath reads them."""

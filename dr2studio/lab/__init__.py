"""Lab code: procedural songs, audio measurements and tiny test models, kept out of the product.

Used by the tests, benchmarks, examples and training recipes. It may import the product
(``dr2studio.audio``, ``dr2studio.models``, ...); no product module imports it, and an import
contract checked in the suite keeps it that way.

- :mod:`dr2studio.lab.synth` - procedural songs (audio, LRC lyrics, style text) with known answers.
- :mod:`dr2studio.lab.analysis` - error measures that compare audio with what a style text or plan asked for.
- :mod:`dr2studio.lab.testing` - tiny random-weight model folders for tests, examples and smoke runs.
"""

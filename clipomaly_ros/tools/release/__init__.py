"""``clipomaly release``: reviewed finds turned into a versioned release (parameter file, provenance, labelled
frames, changelog), and ``clipomaly release diff`` between two releases. See docs/fleet-loop.md.

``build`` makes a release (``ReleaseOptions``, ``build_release``), ``inputs`` reads and checks the reviewed mined
folders (``ReleaseError``), ``report`` words and diffs releases, ``compare`` measures two settings side by side.
Nothing is imported here, so the command line can read this package's light names without loading the model."""

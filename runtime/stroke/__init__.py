"""The stroke path: a stroke from JSON or an array to the encoder's input, and after the encoder to an
embedding.

``parse`` validates strokes once at the boundary and maps them into the 256 model frame; ``raster``
draws them exactly as the authors' training did; ``pipeline`` keeps a session's canvas and
preprocesses it (and photos) as the bundle's recipe says; ``head`` runs the stroke head causally
against a K/V cache.
"""

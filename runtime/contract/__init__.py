"""The contract between export and runtime: what a bundle promises.

``manifest`` spells every graph and tensor name and each graph's spec; ``recipes`` reads the
preprocessing a bundle records (strictly); ``bundle`` loads a bundle folder and checks each file
against its sha256. Nothing here runs a model.
"""

"""Catalogue photos and datasets: reading them (QMUL, ARNet layouts) and writing synthetic ones."""

#: the dataset layouts the commands read and write: the authors' QMUL pickle + photo/, ARNet's A/B folders
LAYOUTS = ("qmul", "arnet")

"""Registered experiments, one file per family; lmlib.experiment imports every module here."""

"""Representation-learning methods, one file each. ``METHODS`` is the table of what is registered: an entry
is imported only when a run asks for it, so adding a method is one file and one line here."""

from bench.core.registry import Registry

METHODS = Registry("method", {
    "autoencoder": "methods.autoencoder:Autoencoder",
    "barlowtwins": "methods.barlowtwins:BarlowTwins",
    "byol": "methods.byol:BYOL",
    "clip": "methods.clip:CLIP",
    "dino": "methods.dino:DINO",
    "instdisc": "methods.instdisc:InstDisc",
    "kmeans-features": "methods.kmeans_features:KMeansFeatures",
    "mae": "methods.mae:MAE",
    "moco-v1": "methods.moco:MoCo",
    "moco-v2": "methods.moco:MoCoV2",
    "moco-v3": "methods.moco:MoCoV3",
    "random": "methods.floors:RandomInit",
    "raw": "methods.floors:RawPixels",
    "simclr": "methods.simclr:SimCLR",
    "simsiam": "methods.simsiam:SimSiam",
    "supervised": "methods.supervised:Supervised",
    "swav": "methods.swav:SwAV",
    "vicreg": "methods.vicreg:VICReg",
})

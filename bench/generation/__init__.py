"""Generation from representations (RCDM / unCLIP at CPU scale): what a frozen embedding keeps, shown and measured.

``decoder``: an embedding-conditioned decoder, frozen features (N, D) -> images, trained beside a run (decoder.pt);
``prior``: for CLIP runs, a prior from the text embedding to the image features (prior.pt), so text -> image;
``classifier``: the fixed classifier that scores decoded images (trained once per dataset on real images, cached);
``protocol``: the generation protocol (pixel MSE and classifier accuracy of reconstructions, text-to-image class
accuracy), written as generation.json beside the run; ``table`` and ``pictures`` aggregate and draw it;
``compositional`` (CLIP runs on ``shapes``): prompts for (shape, colour) pairs training never showed, scored on both
words by ``shape_classifier`` and the foreground colour; ``compositional_table`` aggregates it over seeds.
"""

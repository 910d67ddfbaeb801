"""Evaluation: MME, VQAv2, COCO / Flickr30k captions, POPE — loaders, generation, official-exact metrics."""

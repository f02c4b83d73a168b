"""csa_lib: Coherent Semantic Attention for image inpainting (Liu et al., ICCV 2019), for teaching and
reproduction. One module per concept: masks, data, csa (the layer), peers (contextual attention, shift),
networks, vgg, losses, train, metrics, viz, cli; configuration presets live in ``config``."""

__version__ = "0.1.0"

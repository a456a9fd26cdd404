"""What a search looks for: the candidate ops, the search spaces (each one object: its topology, derivation, formats,
networks and costs), the genotype (a chosen cell as plain data), the networks a genotype builds and drawings of cells.

The built-in spaces are registered here, so that any import of nas.space finds them; a new space is one module under
nas/space/ and its line below."""

from nas.space.darts import DartsSpace
from nas.space.nb201 import NB201Space
from nas.space.spaces import register_space

register_space(DartsSpace())
register_space(NB201Space())

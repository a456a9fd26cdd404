"""What a search looks for: the candidate ops, the cell topologies of each space, the genotype (a chosen cell as
plain data), the network a genotype builds (the DARTS macro skeleton, defined once) and drawings of cells."""

"""Op generator: codegen/specs.toml -> Layer entries -> folded Instantiations -> templates/*.j2 -> generated/."""

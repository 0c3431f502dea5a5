"""Op generator: codegen/specs.toml -> Spec dataclasses -> templates/*.j2 -> generated/."""

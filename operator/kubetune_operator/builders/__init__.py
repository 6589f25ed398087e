"""Pure manifest builders: values in, dicts out, no network."""

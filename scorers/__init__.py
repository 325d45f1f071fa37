"""Document scorers: one module per scorer, free of Beam outside ModelHandler glue."""

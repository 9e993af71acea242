"""Converters from source datasets (KiTS19/21/23 layouts, a procedural phantom) to the raw format."""

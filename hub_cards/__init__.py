"""Model-card templates and Hub export."""

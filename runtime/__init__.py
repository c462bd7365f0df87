"""Live host metrics into user-defined insights: collector, function runtime and metric schema."""

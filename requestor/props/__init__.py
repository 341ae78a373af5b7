"""Golem's property names (yapapi's `yapapi.props`): `com` for pricing and usage counters, `inf`
for resources and runtimes, `base` for declaring payload fields as properties or constraints."""

"""Compatibility with yapapi's module layout (`yapapi.rest.activity.CommandExecutionError`)."""

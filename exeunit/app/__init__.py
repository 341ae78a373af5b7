"""The programs: `exeunit` (serve, ps), the embedded provider, and the assembly both use."""

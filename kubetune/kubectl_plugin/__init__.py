"""`kubectl kubetune`: a kubectl plugin for FineTuneJobs and AdapterDeployments."""

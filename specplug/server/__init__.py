"""``specplug serve``: the embedded engine behind OpenAI, TGI and SageMaker-LMI HTTP protocols."""

"""The model side: loading, the batch layouts, varlen attention in Hugging Face models, the preference
model that scores batches and forms their loss, and the naive twin it is tested against."""

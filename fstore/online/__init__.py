"""The online read path: the lambda merge of batch and speed tiles and its Redis reader."""

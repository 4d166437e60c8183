"""What the entry points run, composed from the layers below: training followed by the evaluation it asks
for. The only package that imports both training and evaluation."""

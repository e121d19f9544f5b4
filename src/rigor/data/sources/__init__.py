"""Built-in datasets besides HEST: the embedded digits (and on a canvas), the generated
histology tiles, an easy generated imagefolder (shapes), and user files (imagefolder, csv)."""

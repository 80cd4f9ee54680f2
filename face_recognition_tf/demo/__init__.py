"""`frtf demo`: a web page (Gradio) to verify, identify and enroll faces with a model.

Only `app.py` imports Gradio, and only when the demo starts, so the package and its other commands
work without the optional `demo` extra.  The page is a thin skin: what each button does is a plain
Python method of `handlers.DemoService` (tested without a browser), the people enrolled live in
`enrolled.EnrolledPeople` (a `faces.gallery.Gallery` file written atomically), and `drawing.py` draws
what was found on the photos.
"""
